// Acceptances complete in any order (a message that stays local is accepted at once, one that
// goes up only after its commit), but PUBACKs on one connection must leave in the order the
// PUBLISHes arrived [MQTT-4.6.0-2]. This queue releases each completion only after those before it.

type Release = (err: Error | null) => void;

interface Slot {
  complete: boolean;
  err: Error | null;
  release: Release;
}

export class OrderedAcks {
  private readonly slots: Slot[] = [];
  private head = 0;

  /** Reserve the next place in line; call the returned function when the message is accepted. */
  reserve(release: Release): (err: Error | null) => void {
    const slot: Slot = { complete: false, err: null, release };
    this.slots.push(slot);
    return (err) => {
      slot.complete = true;
      slot.err = err;
      this.releaseReady();
    };
  }

  private releaseReady(): void {
    while (this.head < this.slots.length && this.slots[this.head]!.complete) {
      const slot = this.slots[this.head++]!;
      slot.release(slot.err);
    }
    if (this.head === this.slots.length) {
      this.slots.length = 0;
      this.head = 0;
    }
  }
}
