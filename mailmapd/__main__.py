from mailmapd.cli import main

raise SystemExit(main())
