"""peer: direct exchange of files and messages between devices, speaking magic-wormhole's protocol.

`socketkit.peer.send.send()` and `socketkit.peer.receive.receive()` are the two doors; `peer.relay` is the
mailbox server and transit relay; `peer.lan` finds the other side on the local network with no server.
"""

# The public magic-wormhole servers: the defaults, so a socketkit user and any `wormhole` user meet.
PUBLIC_MAILBOX = "ws://relay.magic-wormhole.io:4000/v1"
PUBLIC_RELAY = "tcp://transit.magic-wormhole.io:4001"
