// Package replicate keeps replicas of a mailbox store in step with its
// primary at the level of messages and mailboxes, never files: a change
// journal streamed to any number of replicas, applied in order per user,
// acknowledged once durable, fenced by epochs, and a comparison that finds
// and repairs divergence.
//
// A [Source] (the primary's journal and bodies) and a [Target] (what a
// replica applies to) are small interfaces; replicate/store implements
// both.
package replicate
