"""Generated Open Inference Protocol gRPC messages and service (grpc_predict_v2.proto); see README.md."""
