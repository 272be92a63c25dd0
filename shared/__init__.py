"""adaptcast's code shared by the sender and the receiver: the codec, the adapters, the wire format."""
