"""The chat service: an IRC server (Modern IRC + IRCv3) built on the sans-I/O ChatCore."""
