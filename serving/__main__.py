"""The container's entry point: ``python -m serving --model_dir /mnt/models --http_port 8080``."""

import sys

from serving.server import main

if __name__ == "__main__":
    sys.exit(main())
