"""The computer-vision core of PyTorch Automation Studio.

Pure Python + numpy/OpenCV/PyTorch/h5py. Never imports streamlit, flask, rq or redis: adapters in
``services/`` call in, and the engine reports back only through callbacks it was handed.
"""
