"""Torch-free preprocessing shared by training and serving.

Training and the service import the same functions, so what a model saw in
training is exactly what it sees in production.
"""
