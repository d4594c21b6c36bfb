"""Loading, saving and sharing: ``loading`` (model, device and dtype for every entry point), ``remote_code`` (a saved
folder's model_index.json and the code files for ``trust_remote_code``), ``push`` (model card and Hub upload)."""
