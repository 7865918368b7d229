import re
from pathlib import Path

from setuptools import find_packages, setup

# The one place the version is written is bnlab/version.py (read, not imported: importing bnlab needs torch).
VERSION = re.search(r'__version__ = "([^"]+)"', (Path(__file__).parent / "bnlab" / "version.py").read_text()).group(1)

setup(
    name="bnlab",
    version=VERSION,
    description="Why batch norm and weight decay work: train DavidNet variants, measure curvature "
                "and training dynamics.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["bnlab", "bnlab.*"]),
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "seaborn>=0.13",
        "click>=8.1",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "ruff>=0.4"],
        "bench": ["pyhessian", "hessian-eigenthings", "curvlinops-for-pytorch"],
    },
    entry_points={"console_scripts": ["bnlab=bnlab.cli:main"]},
)
