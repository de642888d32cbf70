"""Looking inside a trained network: Grad-CAM heatmaps, channel visualisations, activation maps,
and the grids and overlays that show them. Everything returns numpy arrays; nothing here
depends on the command line."""

from .activations import activation_maps
from .filters import filter_images
from .gradcam import gradcam
from .images import colorize, grid, overlay, save_png

__all__ = ["activation_maps", "colorize", "filter_images", "gradcam", "grid", "overlay", "save_png"]
