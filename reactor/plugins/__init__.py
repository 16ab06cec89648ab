"""Optional protocols built on third-party libraries: `reactor.plugins.websocket` (wsproto)
and `reactor.plugins.protobuf` (protobuf).  Import the submodule you need; each needs its extra
(`pip install pygev[websocket]` / `pygev[protobuf]`)."""
