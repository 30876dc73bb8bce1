"""Atoms: distinct conditions of an environment, each evaluated once into a bitmap.

Two conditions are the same atom when property, operator and value agree (and, for
PERCENTAGE_SPLIT, the segment key, which is part of the hash). Segments of one environment share
many conditions (``plan = pro``, ``country IN ...``), so each is computed once and reused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pyroaring import BitMap

from membership_pipeline.evaluation.bitmaps import bitmap_of_codes, bitmap_where, bitmaps_by_code
from membership_pipeline.evaluation.environment_data import EnvironmentData
from membership_pipeline.evaluation.hash_texts import HashTexts
from membership_pipeline.evaluation.percentage_split import split_members
from membership_pipeline.evaluation.predicates import PreparedCondition, decide
from membership_pipeline.evaluation.properties import PropertyNotSupported, resolve_property
from membership_pipeline.evaluation.segment_model import Condition, ConditionValue, Operator
from membership_pipeline.evaluation.tuning import DEFAULT_TUNING, EvaluationTuning
from membership_pipeline.evaluation.value_column import ValueColumn


@dataclass(frozen=True, slots=True)
class Atom:
    property: str | None
    operator: Operator
    value: ConditionValue
    split_segment_key: str | None = None

    @classmethod
    def of(cls, condition: Condition, segment_key: str) -> Atom:
        is_split = condition.operator is Operator.PERCENTAGE_SPLIT
        return cls(
            property=(condition.property or None) if is_split else condition.property,
            operator=condition.operator,
            value=condition.value,
            split_segment_key=segment_key if is_split else None,
        )

    @property
    def label(self) -> str:
        split = f" @segment {self.split_segment_key}" if self.split_segment_key else ""
        return f"{self.property or '<identity key>'} {self.operator} {self.value!r}{split}"


class AtomEvaluator:
    """Evaluates atoms against one environment, caching columns, hash inputs and results."""

    def __init__(
        self,
        environment: EnvironmentData,
        tuning: EvaluationTuning = DEFAULT_TUNING,
        planned: Iterable[Atom] = (),
    ) -> None:
        """``planned``: the atoms the segments hold, which tells how many conditions read each
        property (a column read by many is split into per-value bitmaps once)."""
        self.environment = environment
        self.tuning = tuning
        self._columns: dict[str, ValueColumn | PropertyNotSupported] = {}
        self._texts: dict[int, HashTexts] = {}
        self._readers = Counter(
            atom.property or ""
            for atom in set(planned)
            if atom.operator is not Operator.PERCENTAGE_SPLIT
        )
        self._value_bitmaps: dict[str, list[BitMap]] = {}
        self.bitmaps: dict[Atom, BitMap] = {}
        self.scoped_evaluations = 0

    def bitmap(self, atom: Atom) -> BitMap:
        """The atom's members; raises ``PropertyNotSupported`` for a property it cannot read."""
        cached = self.bitmaps.get(atom)
        if cached is None:
            cached = self.bitmaps[atom] = self._evaluate(atom)
        return cached

    def bitmap_within(self, atom: Atom, scope: BitMap) -> BitMap:
        """The atom's members among ``scope``; expensive atoms look at the scope only."""
        if (
            atom not in self.bitmaps
            and self.is_expensive(atom)
            and len(scope) < self.tuning.scoped_share * self.environment.size
        ):
            self.scoped_evaluations += 1
            scope_ids = np.frombuffer(scope.to_array(), dtype=np.uint32)
            rows = self.environment.positions_of(scope_ids)
            return bitmap_where(scope_ids, self._split_mask(atom, rows))
        return self.bitmap(atom) & scope

    def is_expensive(self, atom: Atom) -> bool:
        if atom.operator is not Operator.PERCENTAGE_SPLIT:
            return False
        try:
            _, texts = self._split_input(atom)
        except PropertyNotSupported:
            return False
        return len(texts) > self.tuning.expensive_split_distinct_values

    def _evaluate(self, atom: Atom) -> BitMap:
        """The atom over every identity of the environment."""
        ids = self.environment.ids
        if atom.operator is Operator.PERCENTAGE_SPLIT:
            return bitmap_where(ids, self._split_mask(atom, None))
        column = self._column(atom.property or "")
        prepared = PreparedCondition.of(Condition(atom.property, atom.operator, atom.value, ""))
        decided = decide(prepared, column)
        by_value = self._bitmaps_by_value(atom.property or "", column)
        if by_value is None:
            return bitmap_of_codes(ids, column.codes, decided, prepared.when_missing)
        accepted = [by_value[0]] if prepared.when_missing else []
        accepted += [by_value[value + 1] for value in np.flatnonzero(decided)]
        return BitMap.union(*accepted) if accepted else BitMap()

    def _bitmaps_by_value(self, prop: str, column: ValueColumn) -> list[BitMap] | None:
        """Per-value bitmaps of a column of few values read by many conditions, else None."""
        if prop not in self._value_bitmaps:
            if (
                len(column.values) > self.tuning.value_bitmaps_max_values
                or self._readers[prop] < self.tuning.value_bitmaps_min_atoms
            ):
                return None
            self._value_bitmaps[prop] = bitmaps_by_code(
                self.environment.ids, column.codes, len(column.values)
            )
        return self._value_bitmaps[prop]

    def _split_input(self, atom: Atom) -> tuple[np.ndarray | None, HashTexts]:
        """What a split hashes: per identity the index of its text (None: identity ``i`` hashes
        text ``i``; ``-1``: no value), and the texts."""
        # flag-engine: no property means the identity key, read raw (not coerced).
        if atom.property is None:
            return None, self.environment.identity_key_texts
        column = self._column(atom.property)
        texts = self._texts.get(id(column))
        if texts is None:
            texts = self._texts[id(column)] = HashTexts.from_strings(
                [str(value) for value in column.values]
            )
        return column.codes, texts

    def _split_mask(self, atom: Atom, rows: np.ndarray | None) -> np.ndarray:
        codes, texts = self._split_input(atom)
        count = self.environment.size if rows is None else len(rows)
        try:
            threshold = float(atom.value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return np.zeros(count, dtype=bool)
        assert atom.split_segment_key is not None
        key, threads = atom.split_segment_key, self.tuning.hash_threads
        per_thread = self.tuning.hash_messages_per_thread
        if codes is None:  # the identity key: one text per identity
            return split_members(key, texts, threshold, rows, threads, per_thread)
        if rows is None:  # every distinct value once, then broadcast
            within = split_members(key, texts, threshold, None, threads, per_thread)
            return np.append(within, False)[codes]
        picked = codes[rows]
        present = picked >= 0
        mask = np.zeros(count, dtype=bool)
        mask[present] = split_members(key, texts, threshold, picked[present], threads, per_thread)
        return mask

    def _column(self, prop: str) -> ValueColumn:
        if prop not in self._columns:
            try:
                self._columns[prop] = resolve_property(prop, self.environment)
            except PropertyNotSupported as exc:
                self._columns[prop] = exc
        found = self._columns[prop]
        if isinstance(found, PropertyNotSupported):
            raise found
        return found
