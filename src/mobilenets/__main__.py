from mobilenets.cli import main

raise SystemExit(main())
