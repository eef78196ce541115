package sts_test

import (
	"fmt"

	"github.com/resilmail/resilmail/mxpool/sts"
)

// A domain's "_mta-sts" TXT record and the policy file it points to are
// parsed, and the policy decides which MX hosts mail may go to.
func Example() {
	id, err := sts.ParseRecord("v=STSv1; id=20260101T000000")
	if err != nil {
		panic(err)
	}
	fmt.Println("record id:", id)

	p, err := sts.ParsePolicy([]byte("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.mx.example.org\r\nmax_age: 86400\r\n"))
	if err != nil {
		panic(err)
	}
	fmt.Println("mode:", p.Mode, "max age:", p.MaxAge)
	for _, host := range []string{"mx1.example.org", "b.mx.example.org", "a.b.mx.example.org", "evil.example.net"} {
		fmt.Println(host, p.Match(host))
	}
	fmt.Print(p)

	_, err = sts.ParseRecord("v=spf1 -all")
	fmt.Println(err != nil)
	// Output:
	// record id: 20260101T000000
	// mode: enforce max age: 24h0m0s
	// mx1.example.org true
	// b.mx.example.org true
	// a.b.mx.example.org false
	// evil.example.net false
	// version: STSv1
	// mode: enforce
	// mx: mx1.example.org
	// mx: *.mx.example.org
	// max_age: 86400
	// true
}
