#!/usr/bin/env python3
"""Would a review queue pay? Labels chosen by a low-margin rule vs random labels (reference).

A numpy estimate for #23 item 3 (review queue), not adaptd: on embeddings exported by
`adaptd eval --export-embeddings DIR`, a head (ridge on one-hot targets, lambda = tr(XXt)/d,
softmax temperature 0.1, as auto's `ridge@1`) starts from 2 labeled samples per class; the rest
of the training split streams by once. The review rule labels a streamed input when the top two
class probabilities are within 0.2 (the head refitted every 5 labels); the baseline labels k
random inputs of the stream. Prints test accuracy after k = 10, 30, 60 labels, mean of 3 orders.

    python3 scripts/review_rule_sim.py DIR/digits DIR/fashion DIR/sfx0ad DIR/keywords
"""
import numpy as np, sys
def fit(x,y,C):
    mu=x.mean(0); xc=x-mu; Y=np.eye(C)[y]; K=xc@xc.T; lam=np.trace(K)/x.shape[1]
    A=np.linalg.solve(K+lam*np.eye(len(y)),Y-Y.mean(0)); W=xc.T@A; b=Y.mean(0)
    return lambda z:(z-mu)@W+b
def probs(L,T=0.1):
    L=L/T; L=L-L.max(1,keepdims=True); P=np.exp(L); return P/P.sum(1,keepdims=True)
for d in sys.argv[1:]:
    E=d
    X=np.load(E+'/train_x.npy').astype(np.float64); Y=np.load(E+'/train_y.npy'); TX=np.load(E+'/test_x.npy').astype(np.float64); TY=np.load(E+'/test_y.npy')
    C=int(Y.max()+1); res={}
    for seed in range(3):
        rng=np.random.default_rng(seed); p=rng.permutation(len(Y)); X1,Y1=X[p],Y[p]
        init=[]; cnt=np.zeros(C,int)
        for i,y in enumerate(Y1):
            if cnt[y]<2: init.append(i); cnt[y]+=1
        rest=[i for i in range(len(Y1)) if i not in set(init)]
        for k in (10,30,60):
            for rule in ('margin','random'):
                lab=list(init); f=fit(X1[lab],Y1[lab],C); budget=k; stream=list(rest)
                if rule=='random':
                    pick=list(rng.choice(stream,k,replace=False)); lab+=pick
                else:
                    for n,i in enumerate(stream):
                        if budget==0: break
                        P=probs(f(X1[i:i+1]))[0]; s=np.sort(P)
                        if s[-1]-s[-2]<0.2:
                            lab.append(i); budget-=1
                            if budget%5==0: f=fit(X1[lab],Y1[lab],C)
                f=fit(X1[lab],Y1[lab],C); acc=(f(TX).argmax(1)==TY).mean()
                res.setdefault((k,rule),[]).append(acc)
    for k in (10,30,60):
        print(d,f'k={k}', ' '.join(f"{r}={np.mean(res[(k,r)]):.3f}" for r in ('margin','random')),flush=True)
