from nfc.cli import main

raise SystemExit(main())
