package quarantine

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chromiumPath is where Debian's chromium package puts the browser; CI
// installs it. The browser tests fail, rather than skip, without it.
const chromiumPath = "/usr/bin/chromium"

// newBrowser starts a headless Chromium for one test, bounded by a minute.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("these tests need Chromium (Debian package chromium): %v", err)
	}
	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	return bctx
}

// signIn makes every request of the tab carry the test's user header.
func signIn(who string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, t, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
			Headers: network.Headers{"X-Test-User": who},
		})
		return chromedp.Void{}, err
	}
}

func TestBrowserReleaseFromList(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	srv := httptest.NewServer(f.handler(nil))
	defer srv.Close()
	ctx := newBrowser(t)

	row := `tr[data-entry="e1"]`
	require.NoError(t, chromedp.Do(ctx,
		signIn("alice@example.org"),
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(row+" button.release")),
	))
	list, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("table.entries")))
	require.NoError(t, err)
	assert.Contains(t, list, "Cheap <script>alert(1)</script> pills", "the subject is shown as text")
	assert.NotContains(t, list, "bob@example.org", "alice sees only her own recipients")
	assert.Empty(t, f.deliveries())

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(row+" button.release")),
		chromedp.WaitVisible(chromedp.CSS(row+" .status-released")),
	))
	status, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(row+" .rcpt")))
	require.NoError(t, err)
	assert.Equal(t, "alice@example.org: released", status)
	require.Len(t, f.deliveries(), 1, "delivered once")
	assert.Equal(t, []string{"alice@example.org"}, f.deliveries()[0].Env.Recipients())
	assert.Contains(t, string(f.deliveries()[0].Body), "Buy now.")

	// The preview page shows a message as text.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr[data-entry="e4"] a.preview`)),
		chromedp.WaitVisible(chromedp.CSS("pre.text")),
	))
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("pre.text")))
	require.NoError(t, err)
	assert.Equal(t, "Hello both.", strings.TrimSpace(text))
	assert.Len(t, f.deliveries(), 1)
}

func TestBrowserReleaseLink(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	srv := httptest.NewServer(f.handler(nil))
	defer srv.Close()
	ctx := newBrowser(t)
	link := srv.URL + "/release/" + f.token("e4", "bob@example.org", time.Hour)

	// Opening the link (as a mail scanner would) shows a confirmation only.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.CSS("button.confirm")),
	))
	who, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("td.for")))
	require.NoError(t, err)
	assert.Equal(t, "bob@example.org", who)
	page, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	require.NoError(t, err)
	assert.Contains(t, page, "Newsletter")
	assert.NotContains(t, page, "alice@example.org")
	assert.Empty(t, f.deliveries(), "GET released nothing")

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("button.confirm")),
		chromedp.WaitVisible(chromedp.CSS("p.result")),
	))
	result, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("p.result")))
	require.NoError(t, err)
	assert.Equal(t, "Released: the message was delivered to bob@example.org.", result)
	require.Len(t, f.deliveries(), 1)
	assert.Equal(t, []string{"bob@example.org"}, f.deliveries()[0].Env.Recipients())

	// Opening it again says so, and offers nothing more.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.CSS("p.result")),
	))
	result, err = chromedp.Run(ctx, chromedp.Text(chromedp.CSS("p.result")))
	require.NoError(t, err)
	assert.Equal(t, "This message was already released to bob@example.org.", result)
	assert.Len(t, f.deliveries(), 1, "delivered once")
}
