from slmd.cli import main

raise SystemExit(main())
