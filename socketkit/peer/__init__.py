"""peer: direct exchange of files and messages between devices, speaking magic-wormhole's protocol."""
