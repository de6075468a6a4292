"""Triton kernels of resnet_fast, installed as ``resnet_fast.kernels``."""
