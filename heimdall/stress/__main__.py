from heimdall.stress.cli import main

raise SystemExit(main())
