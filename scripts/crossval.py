"""``python -m scripts.crossval``: train and evaluate every fold, resume, aggregate (docs/workflows.md).

Example:
    python -m scripts.crossval --dataset_dir data/phantom --output_dir eval/cv --epochs 20 --tracking mlflow
"""

import sys

from scripts.workflows.crossval import main

if __name__ == "__main__":
    sys.exit(main())
