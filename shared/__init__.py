"""adaptcast's code shared by the sender and the receiver."""

import warnings

# CompressAI scripts a helper with torch.jit when it is imported, and torch deprecates that; it is
# not ours to act on. Filtered here, on the way to every import of CompressAI, so that spawned
# decode workers are quiet too, not only the command line.
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
