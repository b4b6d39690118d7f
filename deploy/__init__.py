"""Publishing: adapters, merged models and the chat app to Hugging Face, ModelScope and OpenXLab."""
