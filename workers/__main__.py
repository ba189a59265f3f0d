"""Entry point: ``python -m workers`` (started by the frontend's supervisor).

The process pins itself to its cores before numpy or ONNX Runtime load:
threads they start at import inherit the affinity of the thread that
starts them, and a thread started unpinned stays unpinned.
"""

import sys

from workers.pinning import pin_from_argv

pin_from_argv(sys.argv[1:])

from workers.main import main  # noqa: E402 -- must follow the pinning

sys.exit(main())
