"""The boundary to protobuf: load, check and save models, shapes, onnxruntime sessions, subgraphs."""
