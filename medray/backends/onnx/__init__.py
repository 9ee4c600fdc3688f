"""The ONNX graphs the ONNX-based backends share (ONNX Runtime, OpenVINO, TensorRT): the
fp32 export or the user's file (:mod:`.graph`), the fp16 conversion (:mod:`.fp16`) and
static Q/DQ INT8 with its calibration reader (:mod:`.qdq`)."""
