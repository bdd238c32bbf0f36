"""``python -m serving --model_dir /mnt/models --http_port 8080 --grpc_port 8081``: the container's entry point."""

import sys

from serving.server import main

if __name__ == "__main__":
    sys.exit(main())
