"""Install the GalaxiesML builder: `pip install -e '.[test]'` (add `gcp` for Dataflow / gs://)."""
from setuptools import find_packages, setup

BEAM = "apache-beam==2.77.0"
#: The Pythons every pin of requirements.txt publishes wheels for (.ci/run checks it); Beam 2.77
#: itself runs on 3.10-3.14, but numpy 2.4 and scipy 1.17 start at 3.11 and sep 1.4.1 stops at 3.13.
PYTHONS = ("3.11", "3.12", "3.13")

setup(
    name="galaxiesml-builder",
    version="0.1.0",
    description="Reproducible Apache Beam builder of the GalaxiesML dataset (HSC PDR2 galaxies)",
    python_requires=f">={PYTHONS[0]},<3.{int(PYTHONS[-1].split('.')[1]) + 1}",
    classifiers=[f"Programming Language :: Python :: {v}" for v in PYTHONS],
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*", "galaxiesml", "galaxiesml.*"]),
    package_data={"galaxiesml": ["sql/*.sql"]},
    install_requires=[
        BEAM,
        "pyarrow>=15",
        "numpy>=1.26",
        "astropy>=6.0",
        "sep>=1.4",
        "h5py>=3.10",
        "requests>=2.31",
        "galsim>=2.5",
        "scipy>=1.11",
        "threadpoolctl>=3.1",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pandas>=2.0", "duckdb>=1.0", "google-cloud-storage>=2.14", "gcp-storage-emulator>=2024.0"],
        "gcp": [f"{BEAM.replace('==', '[gcp]==')}", "google-cloud-storage>=2.14"],
        "torch": ["torch>=2.1"],
    },
    entry_points={"console_scripts": ["galaxiesml=pipeline.cli:main"]},
)
