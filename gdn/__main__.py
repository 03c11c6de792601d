from gdn.cli import main

raise SystemExit(main())
