"""flag-engine's rule semantics in bitmap algebra, evaluated within a shrinking scope.

A segment matches when it has rules and every rule matches. A rule matches when its conditions
match under its type *and* its sub-rules match under its type; an empty list of either counts as
matching. ALL is intersection, ANY union, NONE the complement of the union.

Every step answers "which identities *within this scope* match", so an ALL rule narrows the scope
with its cheap conditions before it reaches an expensive one (a percentage split hashes only the
identities still in scope), and ANY / NONE only look at identities not yet decided.
"""

from __future__ import annotations

from pyroaring import BitMap

from membership_pipeline.evaluation.atoms import Atom, AtomEvaluator
from membership_pipeline.evaluation.errors import UnsupportedProperty
from membership_pipeline.evaluation.properties import PropertyNotSupported
from membership_pipeline.evaluation.segment_model import Condition, Rule, RuleType, Segment


class SegmentComposer:
    def __init__(self, segment: Segment, atoms: AtomEvaluator, universe: BitMap) -> None:
        self.segment = segment
        self.atoms = atoms
        self.universe = universe

    def bitmap(self) -> BitMap:
        if not self.segment.rules:
            return BitMap()
        scope = self.universe
        for rule in sorted(self.segment.rules, key=self._rule_cost):
            scope = self._rule(rule, scope)
            if not scope:
                break
        # A copy: the result may be an atom's cached bitmap or the universe itself.
        return scope.copy()

    def _rule(self, rule: Rule, scope: BitMap) -> BitMap:
        if rule.conditions:
            members = [(self._condition_cost(c), c) for c in rule.conditions]
            scope = self._combine(rule.type, members, scope, self._condition)
        if rule.rules and scope:
            members = [(self._rule_cost(r), r) for r in rule.rules]
            scope = self._combine(rule.type, members, scope, self._rule)
        return scope

    @staticmethod
    def _combine(rule_type: RuleType, members: list, scope: BitMap, evaluate: object) -> BitMap:
        ordered = [member for _, member in sorted(members, key=lambda pair: pair[0])]
        if rule_type is RuleType.ALL:
            for member in ordered:
                scope = evaluate(member, scope)  # type: ignore[operator]
                if not scope:
                    break
            return scope
        undecided, matched = scope, BitMap()
        for member in ordered:
            hit = evaluate(member, undecided)  # type: ignore[operator]
            matched |= hit
            undecided = undecided - hit
            if not undecided:
                break
        return matched if rule_type is RuleType.ANY else scope - matched

    def _condition(self, condition: Condition, scope: BitMap) -> BitMap:
        try:
            return self.atoms.bitmap_within(Atom.of(condition, self.segment.key), scope)
        except PropertyNotSupported as exc:
            raise UnsupportedProperty(self.segment.key, condition.location, str(exc)) from None

    def _condition_cost(self, condition: Condition) -> int:
        return int(self.atoms.is_expensive(Atom.of(condition, self.segment.key)))

    def _rule_cost(self, rule: Rule) -> int:
        return max(
            [self._condition_cost(c) for c in rule.conditions]
            + [self._rule_cost(r) for r in rule.rules]
            + [0]
        )
