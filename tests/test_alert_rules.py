"""The Prometheus alert rules and the Grafana dashboard shipped in deploy/.

promtool comes from the Debian package ``prometheus`` (``apt-get install -y prometheus``). Without
it these tests FAIL, never skip: CI must install it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "cdcr-dashboard.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install the Debian package with `apt-get install -y prometheus`"
        )
    return found


def test_rules_pass_promtool_check() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_names_cover_the_required_conditions() -> None:
    text = RULES.read_text(encoding="utf-8")
    for metric in (
        "cdcr_consumer_time_lag_seconds",
        "cdcr_consumer_status",
        "cdcr_reconcile_discrepancies_open",
        "cdcr_reconcile_windows_behind",
        'cdcr_events_total{outcome="dead_lettered"}',
    ):
        assert metric in text, metric


# promtool's rule unit tests: the stop alert fires after its `for`, not before; dead letters too.
UNIT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'cdcr_consumer_status{{group="g",topic="t",partition="0",status="STOP"}}'
        values: '0 1 1 1 1'
      - series: 'cdcr_consumer_status{{group="g",topic="t",partition="0",status="OK"}}'
        values: '1 0 0 0 0'
      - series: 'cdcr_events_total{{table="public.t",outcome="dead_lettered"}}'
        values: '0 0 3 5 9 9 9 9 9 9'
    alert_rule_test:
      - eval_time: 2m
        alertname: CdcrConsumerStopped
        exp_alerts: []
      - eval_time: 4m
        alertname: CdcrConsumerStopped
        exp_alerts:
          - exp_labels: {{severity: critical, group: g, topic: t, partition: "0"}}
            exp_annotations:
              summary: "cdcr group g stopped consuming t[0]"
              description: "The partition has lag and either no live consumer (STOP) or a \
committed offset that does not move (STALL)."
      - eval_time: 8m
        alertname: CdcrDeadLettersRising
        exp_alerts:
          - exp_labels: {{severity: warning, table: public.t}}
            exp_annotations:
              summary: "9 change events dead-lettered on public.t in 15 minutes"
              description: "Events that could not be decoded or applied; see cdcr.dead_letters."
"""


def test_rules_unit_tests(tmp_path: Path) -> None:
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(UNIT_TESTS.format(rules=RULES), encoding="utf-8")
    result = subprocess.run(
        [promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for metric in (
        "cdcr_consumer_time_lag_seconds",
        "cdcr_consumer_offset_lag",
        "cdcr_consumer_status",
        "cdcr_events_total",
        "cdcr_reconcile_discrepancies_open",
        "cdcr_reconcile_windows_behind",
    ):
        assert metric in exprs, metric
