import sys

from pyro_vae._entry import main

sys.exit(main())
