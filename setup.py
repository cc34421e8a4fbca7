"""Install the GalaxiesML builder: `pip install -e '.[test]'` (add `gcp` for Dataflow / gs://)."""
from setuptools import find_packages, setup

BEAM = "apache-beam==2.77.0"

setup(
    name="galaxiesml-builder",
    version="0.1.0",
    description="Reproducible Apache Beam builder of the GalaxiesML dataset (HSC PDR2 galaxies)",
    python_requires=">=3.11,<3.12",
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
