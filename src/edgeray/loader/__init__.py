"""SOLAR training-data loader: schedule, epoch reordering, Belady buffer, rank balancing, coalesced HDF5 reads."""

from edgeray.loader.plan import POLICIES, RankPlan, balanced_split, belady_hits, even_split, make_plans
from edgeray.loader.reader import DroppingFile, TrainsetReader, drop_cache
from edgeray.loader.schedule import Schedule, order_epochs
from edgeray.loader.solar import LoaderBatch, SolarLoader

__all__ = [
    "POLICIES",
    "DroppingFile",
    "LoaderBatch",
    "RankPlan",
    "Schedule",
    "SolarLoader",
    "TrainsetReader",
    "balanced_split",
    "belady_hits",
    "drop_cache",
    "even_split",
    "make_plans",
    "order_epochs",
]
