"""``python -m scripts.prepare_data``: the only way data enters the bundle (see ``docs/data.md``).

Example:
    python -m scripts.prepare_data --dataset phantom --preset brain-growth --num_cases 40 --out data/phantom
    python -m scripts.prepare_data --dataset brain-growth --out data/brain-growth \\
        --source ../shared/data/brain-growth/brain_growth_alpha.zip \\
        --trimaps ../shared/data/brain-growth/trimap_brain.zip
"""

import sys

from scripts.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
