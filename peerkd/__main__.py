from peerkd.cli import main

raise SystemExit(main())
