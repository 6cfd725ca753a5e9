"""The Faust integration end to end: the same real pipeline, applied by a faust-streaming worker
handing batches to the same apply engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import sqlalchemy as sa

from tests.conftest import Services
from tests.stream.pipeline import (
    TRAFFIC_RECORDS,
    Pipeline,
    applied_counts,
    expected_records,
    source_traffic,
    target_matches_source,
)

pytestmark = pytest.mark.services


def test_faust_agent_applies_the_stream_through_the_same_engine(
    pipeline: Pipeline, services: Services, source_engine: sa.Engine, target_engine: sa.Engine
) -> None:
    source_traffic(source_engine, pipeline.table)
    expected_records(pipeline, services, TRAFFIC_RECORDS)
    env = {**os.environ, **{f"CDCR_{k}": v for k, v in pipeline.env.items()}}
    proc = subprocess.run(
        [sys.executable, "-m", "cdc_reconciler.stream.faust_app", "--stop-when-idle", "5"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Faust's worker writes terminal control codes to stdout too; the summary is one JSON object.
    found = re.search(r'\{"consumed".*\}', proc.stdout)
    assert found, proc.stdout[-2000:]
    summary = json.loads(found.group(0))
    assert summary["consumed"] == TRAFFIC_RECORDS and summary["error"] is False

    target_matches_source(pipeline, source_engine, target_engine)
    c = applied_counts(target_engine, f"g_{pipeline.table}-faust")
    assert c["consumed"] == TRAFFIC_RECORDS
    assert c["consumed"] == c["applied"] + c["dup"] + c["stale"] + c["dlq"] + c["noop"]
