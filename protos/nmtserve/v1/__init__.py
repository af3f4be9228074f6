"""``nmtserve.v1`` gRPC API: messages (``translator_pb2``) and stubs (``translator_pb2_grpc``), generated from
``translator.proto`` by ``python -m nmtserve.protos.generate``; never edit the generated files by hand."""
