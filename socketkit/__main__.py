from socketkit.cli import main

raise SystemExit(main())
