# A tiny package the venv tests install with pip install --no-index (no wheel needed: setup.py).
from setuptools import setup

setup(name="sprdemo", version="1.0", packages=["sprdemo"])
