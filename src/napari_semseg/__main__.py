import sys

from napari_semseg.cli import main

sys.exit(main())
