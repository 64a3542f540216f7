from setuptools import setup

# kernels/ is installed as fastrnn._kernels (PyPI already has a `kernels`).
PACKAGES = {
    "fastrnn": "fastrnn",
    "fastrnn._backends": "fastrnn/_backends",
    "fastrnn.tasks": "fastrnn/tasks",
    "fastrnn._kernels": "kernels",
    "fastrnn._kernels.cpu": "kernels/cpu",
    "fastrnn._kernels.cuda": "kernels/cuda",
}

setup(
    name="fastrnn",
    version="0.1.0",
    description="Fused RNN/GRU/LSTM forward and BPTT kernels: Numba on the CPU, CuPy CUDA on NVIDIA GPUs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"fastrnn._kernels.cuda": ["*.cu", "*.cuh"]},
    install_requires=["numpy>=1.23", "numba>=0.58", "scipy>=1.9"],  # scipy: the BLAS behind np.dot in @njit
    extras_require={
        "cuda": ["cupy-cuda13x"],
        "torch": ["torch>=2.0"],
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6",
                 "seqeval>=1.2", "scikit-learn>=1.0"],   # independent oracles for the metrics tests
        "bench": ["pytest-benchmark>=4", "threadpoolctl>=3"],
        "tasks": ["tqdm>=4", "sacrebleu>=2", "threadpoolctl>=3"],
    },
    entry_points={"console_scripts": ["fastrnn=fastrnn.cli:main"]},
)
