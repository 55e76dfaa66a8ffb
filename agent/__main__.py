from agent import cli

raise SystemExit(cli.main())
