from cdc_reconciler.cli.root import main

main()
