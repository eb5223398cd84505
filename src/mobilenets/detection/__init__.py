"""SSDLite object detection (MobileNetV2 paper §6.2): boxes, anchors, matching, loss, model, data, task."""
