package failover_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"

	"github.com/resilmail/resilmail/failover"
)

// An Elector under a Manual lease: the operator grants the lease and the
// node is promoted with the token as its minimum epoch; a revoke demotes
// it, the next grant promotes it again, and stopping the Elector demotes
// it and releases the term.
func Example() {
	events := make(chan string)
	node := failover.CandidateFuncs{
		// EligibleFunc, nil here, would refuse a lagging or unhealthy node.
		PromoteFunc: func(ctx context.Context, token uint64) error {
			events <- fmt.Sprintf("promote: epoch at least %d", token) // raise the epoch durably, then accept writes
			return nil
		},
		DemoteFunc: func(ctx context.Context, reason error) error {
			events <- fmt.Sprintf("demote: lease lost %v, stopped %v", errors.Is(reason, failover.ErrLeaseLost), errors.Is(reason, context.Canceled))
			return nil
		},
	}
	lease := failover.NewManual(4) // the last epoch used was 4
	el, err := failover.NewElector(lease, node, &failover.ElectorOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- el.Run(ctx) }()

	if err := lease.Grant(5); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-events)
	lease.Revoke()
	fmt.Println(<-events)
	fmt.Println("grant 5 again:", lease.Grant(5) != nil) // tokens only rise
	if err := lease.Grant(6); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-events)
	stop()
	fmt.Println(<-events)
	fmt.Println("Run:", <-done)
	st := el.Status()
	fmt.Println("primary:", st.Primary, "token:", st.Token, "promotions:", st.Promotions, "demotions:", st.Demotions)
	// Output:
	// promote: epoch at least 5
	// demote: lease lost true, stopped false
	// grant 5 again: true
	// promote: epoch at least 6
	// demote: lease lost false, stopped true
	// Run: <nil>
	// primary: false token: 6 promotions: 2 demotions: 2
}
