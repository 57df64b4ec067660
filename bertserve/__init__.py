"""bertserve: BERT-family text vectors, served, searched and distilled. Offline."""
import os

# OpenMP threads that spin while waiting collapse under load on a busy machine (one sentence took 100-1300 ms
# instead of 15 ms on a shared 2-core box); sleeping waits cost nothing measurable otherwise. It only takes
# effect if set before torch is imported, hence here. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bertserve.client import AsyncClient, Client  # noqa: E402
from bertserve.encode import Encoder, EncoderConfig  # noqa: E402
from bertserve.models import CheckpointError  # noqa: E402
from bertserve.search import Collection  # noqa: E402

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "Collection", "Encoder", "EncoderConfig", "CheckpointError", "__version__"]
