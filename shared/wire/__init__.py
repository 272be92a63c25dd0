"""Messages on the WebRTC data channel: records of the .acs format cut into checksummed chunks."""
