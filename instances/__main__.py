import sys

from asrfleet.instance.main import main

sys.exit(main())
