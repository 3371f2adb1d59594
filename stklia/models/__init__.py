"""Speaker models (generators: features -> embeddings) in the manner of torchvision's resnet.py: ResNet,
ECAPA-TDNN, CAM++, x-vector TDNN; their pooling layers and padding masks. No I/O."""
