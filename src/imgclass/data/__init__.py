"""Data layer: datasets, readers, splits and the one image decoder."""

from ..errors import ImageLoadError
from .dataset import SPLIT_NAMES, TASKS, UNLABELLED, ImageDataset
from .decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageSource, is_image_file, load_image
from .readers import find_images, from_paths, load_dataset, read_csv, read_folder, read_jsonl, read_taxonomy

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "SPLIT_NAMES", "TASKS", "UNLABELLED", "ImageDataset",
    "ImageLoadError", "ImageSource", "find_images", "from_paths", "is_image_file", "load_dataset",
    "load_image", "read_csv", "read_folder", "read_jsonl", "read_taxonomy",
]
